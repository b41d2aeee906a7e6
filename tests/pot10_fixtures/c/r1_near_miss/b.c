int step_a(int x);

static int helper(int x)
{
    return step_a(x) * 2;
}

int step_b(int x)
{
    int i;
    int acc = 0;
    for (i = 0; i < x; i++) {
        acc += helper(i);
    }
    return acc;
}
