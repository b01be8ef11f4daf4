/* Seeded random numbers of our own: xoshiro256** with splitmix64 seeding,
 * and a counter-based hash for values that must not depend on loop order. */
#include <math.h>

#include "tensor.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void pare_rng_seed(pare_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

uint64_t pare_rng_u64(pare_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float pare_rng_uniform(pare_rng *r)
{
    return (float)(pare_rng_u64(r) >> 40) * 0x1.0p-24f;
}

float pare_rng_range(pare_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * pare_rng_uniform(r);
}

float pare_rng_normal(pare_rng *r)
{
    /* Box-Muller on doubles; u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(pare_rng_u64(r) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(pare_rng_u64(r) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t pare_rng_below(pare_rng *r, uint64_t n)
{
    PARE_CHECK(n > 0, "pare_rng_below(0)");
    /* Rejection sampling: reject the top partial copy of [0, n). */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = pare_rng_u64(r);
    while (x >= limit);
    return x % n;
}

void pare_rng_shuffle(pare_rng *r, int *idx, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)pare_rng_below(r, (uint64_t)i + 1);
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

float pare_hash_uniform(uint64_t seed, uint64_t counter, uint64_t index)
{
    uint64_t x = seed ^ 0x5DEECE66Dull;
    x ^= splitmix64(&x) + counter * 0x9E3779B97F4A7C15ull;
    x ^= splitmix64(&x) + index * 0xC2B2AE3D27D4EB4Full;
    return (float)(splitmix64(&x) >> 40) * 0x1.0p-24f;
}
