/* R1 violation: exactly one direct recursion. */
unsigned factorial(unsigned n)
{
    if (n < 2u) {
        return 1u;
    }
    return n * factorial(n - 1u);
}
