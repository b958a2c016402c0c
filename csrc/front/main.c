/* mayflyd-front: requests run on the tenants' sandbox hosts (hosts.c). */
#include "front/front.h"
#include "front/hosts.h"

int main(int argc, char **argv)
{
    return mf_front_main(argc, argv, &mf_hosts_backend);
}
