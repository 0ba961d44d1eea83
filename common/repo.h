/* nbdsnap common: the backup repository (placeholder, being written). */
#ifndef NBDSNAP_REPO_H
#define NBDSNAP_REPO_H
#endif
