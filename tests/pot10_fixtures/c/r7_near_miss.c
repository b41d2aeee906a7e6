#include <stdio.h>

/* R7 near miss: results used or explicitly discarded; pointers checked. */
int parse_header(const char *buf)
{
    if (buf == 0) {
        return -1;
    }
    return buf[0] == '#';
}

void log_line(const char *msg)
{
    if (msg) {
        printf("%s\n", msg);
    }
}

int load(const char *buf)
{
    (void)parse_header(buf);
    log_line(buf);
    if (parse_header(buf) < 0) {
        return -1;
    }
    return 0;
}
