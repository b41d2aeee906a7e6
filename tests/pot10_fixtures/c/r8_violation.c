/* R8 violation: one token-pasting macro. */
#define MAX_ITEMS 16
#define CAT(a, b) a##b

int CAT(item_, count) = MAX_ITEMS;
