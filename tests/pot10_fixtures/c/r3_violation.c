#include <stdlib.h>

/* R3 violation: one allocation outside initialization. */
static char *pool;

void buffers_init(void)
{
    pool = malloc(4096);
}

void process(int n)
{
    char *scratch = malloc((size_t)n);
    free(scratch);
}
