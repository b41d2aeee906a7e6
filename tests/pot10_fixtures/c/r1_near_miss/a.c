/* R1 near miss: `helper` exists in a.c and b.c; b.c's helper calls
 * step_a, which calls a.c's own static helper. Merging by name would
 * invent the cycle helper -> step_a -> helper. */
static int helper(int x)
{
    return x + 1;
}

int step_a(int x)
{
    return helper(x);
}
