/* R2 near miss: counter loops with visible bounds. */
int sum(const int *v, int n)
{
    int i = 0;
    int s = 0;
    while (i < n) {
        s += v[i];
        i++;
    }
    for (i = 0; i < n; i++) {
        s += v[i];
    }
    do {
        i -= 1;
    } while (i > 0);
    return s;
}
