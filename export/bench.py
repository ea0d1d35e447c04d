def add_arguments(p):
    pass


def run_bench(a):
    return 0
