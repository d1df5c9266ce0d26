/*
 * testkeys: drive keys for unit tests, derived from a volume key of one repeated byte, so
 * two calls with the same byte give the same keys and different bytes give different ones.
 */
#ifndef FERRY_TESTKEYS_H
#define FERRY_TESTKEYS_H

#include <stdint.h>

struct keys;

/* keys_derive over KEYS_VOLUME_KEY_LEN bytes of fill; NULL when it fails. */
struct keys *test_keys(uint8_t fill);

#endif
