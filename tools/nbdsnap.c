/* nbdsnap tool (being written). */
#include <config.h>
#include <stdio.h>
int main (void) { fprintf (stderr, "nbdsnap: not written yet\n"); return 1; }
