#include <assert.h>

/* R5 near miss: every function has two state-dependent assertions. */
int clamp(int x, int lo, int hi)
{
    assert(lo <= hi);
    assert(x == x);
    return x < lo ? lo : (x > hi ? hi : x);
}

int scale(int x)
{
    assert(x >= 0);
    assert(x < 1000);
    return x * 2;
}
