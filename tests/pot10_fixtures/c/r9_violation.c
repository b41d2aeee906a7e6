/* R9 violation: one double dereference. */
int first(int **rows)
{
    return **rows;
}
