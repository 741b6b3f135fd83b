#include <criterion/criterion.h>
Test(interop, placeholder) { cr_assert(1); }
