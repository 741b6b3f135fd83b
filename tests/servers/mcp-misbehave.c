#include "mcp.h"
int main(void) { return 0; }
