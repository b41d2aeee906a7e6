/* R7 violation: one ignored non-void return value. */
int parse_header(const char *buf)
{
    if (buf == 0) {
        return -1;
    }
    return buf[0] == '#';
}

void load(const char *buf)
{
    if (buf != 0) {
        parse_header(buf);
    }
}
