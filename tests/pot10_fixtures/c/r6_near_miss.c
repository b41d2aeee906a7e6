/* R6 near miss: constants, extern declarations, locals used where declared. */
static const int LIMIT = 10;
extern int shared_flag;

int count_small(const int *v, int n)
{
    int total = 0;
    int i;
    for (i = 0; i < n; i++) {
        if (v[i] < LIMIT) {
            int bonus = 1;
            total += bonus;
        }
    }
    return total + i;
}
