#include <stdlib.h>

/* R3 near miss: allocation only in init code (by name and by marker). */
static char *pool;
static char *table;

void buffers_init(void)
{
    pool = malloc(4096);
}

/* pot10: init */
void prepare_tables(void)
{
    table = calloc(16, 1);
}

void process(int n)
{
    pool[0] = (char)n;
    free(table);
}
