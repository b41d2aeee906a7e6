/* R6 violation: one mutable file-scope variable. */
static const int LIMIT = 10;
extern int shared_flag;
int counter;

int bump(void)
{
    counter++;
    return counter < LIMIT;
}
