/* R9 near miss: one level of dereference at a time, no function pointers. */
struct node {
    int value;
    struct node *next;
};

int value_of(const struct node *n, const int *scale, int a, int b)
{
    const struct node *next = n->next;
    int v = n->value * *scale;
    int arr[2] = {a * b, 0};
    return v + arr[0] + (next ? next->value : 0);
}
