/* R2 violation: one loop on a non-counter condition. */
int poll_device(volatile int *ready)
{
    int spins = 0;
    while (!*ready) {
        spins++;
    }
    return spins;
}
