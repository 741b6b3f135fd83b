typedef int placeholder_unit; /* replaced by the module implementation */
