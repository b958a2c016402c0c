/* mayflyd-front: no backend yet, so every request is answered 503
 * (no tenant is connected); the hosts are wired in by a later change. */
#include "front/front.h"

int main(int argc, char **argv)
{
    return mf_front_main(argc, argv, NULL);
}
