/* R10 violation: one compiler warning (unused variable). */
int answer(void)
{
    int unused;
    return 42;
}
