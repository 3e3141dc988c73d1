"""range_: a loop the core program runs; here a Python loop over the (runtime) count."""


def range_(n):
    return range(int(n))
