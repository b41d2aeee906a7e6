/* R10 near miss: compiles cleanly with -Wall -Wextra -pedantic. */
int answer(int x)
{
    return x + 42;
}
