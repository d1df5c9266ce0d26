/* testkeys: see testkeys.h. */
#include "testkeys.h"

#include <sodium.h>
#include <string.h>

#include "../../common/keys.h"

struct keys *test_keys(uint8_t fill)
{
	unsigned char vk[KEYS_VOLUME_KEY_LEN];
	struct keys *k = NULL;

	memset(vk, fill, sizeof(vk));
	if (keys_derive(vk, sizeof(vk), &k, NULL) < 0)
		k = NULL;
	sodium_memzero(vk, sizeof(vk));
	return k;
}
