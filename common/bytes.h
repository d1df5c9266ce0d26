/*
 * bytes: little-endian field access and overflow-checked arithmetic.
 *
 * Untrusted bytes are never cast to structs; fields are loaded one by one
 * with these helpers, and every offset+length on hostile input goes through
 * ck_add/ck_mul (which return nonzero on overflow).
 */
#ifndef FERRY_BYTES_H
#define FERRY_BYTES_H

#include <stdint.h>
#include <stddef.h>

#define ck_add(a, b, r) __builtin_add_overflow((a), (b), (r))
#define ck_mul(a, b, r) __builtin_mul_overflow((a), (b), (r))

static inline uint16_t le16_load(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t le32_load(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t le64_load(const uint8_t *p)
{
	return (uint64_t)le32_load(p) | (uint64_t)le32_load(p + 4) << 32;
}

static inline void le16_store(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void le32_store(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline void le64_store(uint8_t *p, uint64_t v)
{
	le32_store(p, (uint32_t)v);
	le32_store(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t be32_load(const uint8_t *p)
{
	return (uint32_t)p[3] | (uint32_t)p[2] << 8 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[0] << 24;
}

static inline uint64_t be64_load(const uint8_t *p)
{
	return (uint64_t)be32_load(p) << 32 | be32_load(p + 4);
}

#endif
