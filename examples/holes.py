def mean(values):
    """The arithmetic mean of a non-empty sequence of numbers.

    >>> mean([1, 2, 3, 4])
    2.5
    """
    if not values:
        raise ValueError("mean of an empty sequence")
    return <mask:4> / len(values)


def clamp(x, low, high):
    """x limited to the range from low to high.

    >>> clamp(5, 0, 3)
    3
    """
    return max(low, <blank:8>)
