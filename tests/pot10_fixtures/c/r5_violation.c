#include <assert.h>

/* R5 violation: `scale` has one real assertion; assert(1) does not count. */
int clamp(int x, int lo, int hi)
{
    assert(lo <= hi);
    assert(x == x);
    return x < lo ? lo : (x > hi ? hi : x);
}

int scale(int x)
{
    assert(x >= 0);
    assert(1);
    return x * 2;
}
