#ifndef SVCNAT_CHOST_SHIM_H
#define SVCNAT_CHOST_SHIM_H
/* glibc calls the Glibc module does not export: malloc_trim. */
#include <malloc.h>
#endif
