#include <criterion/criterion.h>
Test(base, placeholder) { cr_assert(1); }
