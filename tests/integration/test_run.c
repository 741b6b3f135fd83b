#include <criterion/criterion.h>
Test(run, placeholder) { cr_assert(1); }
