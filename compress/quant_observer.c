/* Observers: the range of the values a tensor takes, seen batch after
 * batch, from which activation quantization parameters are chosen.
 *
 * Min/max and its moving average keep two numbers. The histogram kinds keep
 * a fixed number of bins on a grid that only coarsens by factors of two
 * (the layout is written beside pare_observer in quant.h), and choose the
 * range at the end from the counts: by minimizing the expected squared
 * quantization error, or by percentiles. */
#include <math.h>
#include <string.h>

#include "compress/quant.h"

#define HIST_MIN_BINS 16
#define HIST_MAX_BINS 8192 /* the range search is O(bins^2): 67M steps at most */
#define MAX_LEVEL     1000 /* far past any need (positions stay below 2^400), and 2^-MAX_LEVEL is a normal double */

static int is_histogram(pare_observer_kind k)
{
    return k == PARE_OBSERVE_HISTOGRAM || k == PARE_OBSERVE_PERCENTILE;
}

static int check_config(const pare_quant_config *cfg)
{
    pare_observer_kind k = cfg->observer;
    if (k != PARE_OBSERVE_MINMAX && k != PARE_OBSERVE_MOVING_AVG && !is_histogram(k))
        return pare_set_error("observer kind %d is not known", (int)k);
    if (k == PARE_OBSERVE_MOVING_AVG && !(cfg->averaging > 0 && cfg->averaging <= 1))
        return pare_set_error("moving-average constant %g: it must be in (0, 1]", (double)cfg->averaging);
    if (!is_histogram(k)) return 0;
    if (cfg->hist_bins < HIST_MIN_BINS || cfg->hist_bins > HIST_MAX_BINS)
        return pare_set_error("histogram observer: %d bins: it must be between %d and %d", cfg->hist_bins,
                              HIST_MIN_BINS, HIST_MAX_BINS);
    if (k == PARE_OBSERVE_PERCENTILE && !(cfg->percentile > 50 && cfg->percentile <= 100))
        return pare_set_error("percentile observer: percentile %g: it must be in (50, 100]", (double)cfg->percentile);
    int32_t qmin, qmax; /* the error the histogram minimizes is that of act_bits */
    if (pare_qrange(cfg->act_bits, 0, &qmin, &qmax)) return -1;
    return 0;
}

int pare_observer_init(pare_observer *o, const pare_quant_config *cfg)
{
    if (check_config(cfg)) return -1;
    *o = (pare_observer){0};
    o->kind = cfg->observer;
    o->averaging = cfg->averaging;
    o->min = INFINITY;
    o->max = -INFINITY;
    if (is_histogram(o->kind)) {
        o->bits = cfg->act_bits;
        o->bins = cfg->hist_bins;
        o->percentile = cfg->percentile;
        o->hist = pare_calloc((size_t)o->bins * sizeof *o->hist);
    }
    return 0;
}

/* ---- the histogram's grid ------------------------------------------------------ */

/* The position of x on the grid, in units of width0. Rounding is monotone,
 * so a larger x never gets a smaller position. */
static double position(const pare_observer *o, float x)
{
    return ((double)x - o->origin) / o->width0;
}

/* The bin of position y at `level` (before subtracting the window start):
 * floor(y / 2^level). Scaling by a power of two is exact (a result too
 * small to be exact is 0 or -1 after floor either way), so binning at a
 * level and merging to a coarser one agree exactly. The update loop
 * inlines it as floor(y * scale) with the same scale. */
static double bin_at(double y, int level)
{
    return floor(y * ldexp(1.0, -level));
}

/* The first batch's extremes fix the grid: bins - 1 bins span them (the
 * maximum starts the last bin). A batch of one value gets a grid fine
 * enough for anything near it; growth coarsens it as needed. */
static void start_grid(pare_observer *o, float lo, float hi)
{
    o->origin = lo;
    double width = ((double)hi - lo) / (o->bins - 1);
    if (!(width > 0)) width = ldexp(fabs((double)lo) > 0 ? fabs((double)lo) : 1.0, -20);
    o->width0 = width;
    o->level = 0;
    o->first = 0;
}

/* Makes the window span [lo, hi] (every value seen, and the batch's): the
 * smallest level at which the two ends' bins are fewer than `bins` apart,
 * the window starting at lo's bin. Nonempty bins all lie between those two,
 * so merging loses no count. */
static void cover(pare_observer *o, float lo, float hi)
{
    double ylo = position(o, lo), yhi = position(o, hi);
    int level = o->level;
    while (level < MAX_LEVEL && bin_at(yhi, level) - bin_at(ylo, level) > o->bins - 1) level++;
    double first = bin_at(ylo, level);
    if (level == o->level && first == o->first) return;
    long long *old = o->hist;
    o->hist = pare_calloc((size_t)o->bins * sizeof *o->hist);
    for (int j = 0; j < o->bins; j++) {
        if (!old[j]) continue;
        /* old bin j is (first_old + j) at the old level: floor of that by 2^(level change) */
        double k = bin_at(o->first + j, level - o->level) - first;
        int i = k < 0 ? 0 : k > o->bins - 1 ? o->bins - 1 : (int)k; /* in range by construction */
        o->hist[i] += old[j];
    }
    pare_free(old);
    o->level = level;
    o->first = first;
}

static void histogram_update(pare_observer *o, const float *x, size_t n)
{
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (isfinite(x[i])) {
            lo = fminf(lo, x[i]);
            hi = fmaxf(hi, x[i]);
        }
    if (lo > hi) return; /* nothing finite */
    if (o->binned == 0) start_grid(o, lo, hi);
    o->min = fminf(o->min, lo);
    o->max = fmaxf(o->max, hi);
    cover(o, o->min, o->max);
    double first = o->first, scale = ldexp(1.0, -o->level);
    int last = o->bins - 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) continue;
        double k = floor(position(o, x[i]) * scale) - first; /* bin_at, inlined */
        o->hist[k < 0 ? 0 : k > last ? last : (int)k]++;
        o->zeros += x[i] == 0;
        o->binned++;
    }
}

void pare_observer_update(pare_observer *o, const float *x, size_t n)
{
    if (n == 0) return;
    if (is_histogram(o->kind)) {
        histogram_update(o, x, n);
        o->count += (long long)n;
        return;
    }
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    if (o->kind == PARE_OBSERVE_MOVING_AVG && o->count > 0) {
        o->min += o->averaging * (lo - o->min);
        o->max += o->averaging * (hi - o->max);
    } else if (o->kind == PARE_OBSERVE_MOVING_AVG) {
        o->min = lo; /* the first batch sets them */
        o->max = hi;
    } else {
        o->min = fminf(o->min, lo);
        o->max = fmaxf(o->max, hi);
    }
    o->count += (long long)n;
}

/* ---- choosing the range ----------------------------------------------------------
 * Positions below are in bins of the current window: bin i covers [i, i + 1),
 * and its values are taken as spread evenly over it. */

/* The real value at window position u. */
static float real_at(const pare_observer *o, double u)
{
    return (float)(o->origin + ldexp(o->first + u, o->level) * o->width0);
}

/* The window position of real 0 (it may lie outside the window). */
static double zero_position(const pare_observer *o)
{
    return position(o, 0.0f) * ldexp(1.0, -o->level) - o->first;
}

/* Prefix sums over the bins of count, count * centre and count * (centre^2
 * + 1/12), so that the squared distance of every value in bins [0, k) to a
 * point a is a^2 P0 - 2 a P1 + P2 (the 1/12 is a bin's own spread). */
typedef struct moments {
    int bins;
    double *p0, *p1, *p2; /* bins + 1 each */
    const double *n;
} moments;

static void moments_init(moments *m, const double *n, int bins)
{
    m->bins = bins;
    m->n = n;
    m->p0 = pare_alloc(3 * ((size_t)bins + 1) * sizeof(double));
    m->p1 = m->p0 + bins + 1;
    m->p2 = m->p1 + bins + 1;
    m->p0[0] = m->p1[0] = m->p2[0] = 0;
    for (int i = 0; i < bins; i++) {
        double c = i + 0.5;
        m->p0[i + 1] = m->p0[i] + n[i];
        m->p1[i + 1] = m->p1[i] + n[i] * c;
        m->p2[i + 1] = m->p2[i] + n[i] * (c * c + 1.0 / 12);
    }
}

/* The count of values below position a, and their squared clipping error
 * summed (what clamping them to a costs). */
static void clipped_below(const moments *m, double a, double *mass, double *cost)
{
    int k = a <= 0 ? 0 : a >= m->bins ? m->bins : (int)a; /* bins [0, k) lie wholly below */
    *mass = m->p0[k];
    *cost = a * a * m->p0[k] - 2 * a * m->p1[k] + m->p2[k];
    if (k < m->bins && a > k) { /* bin k straddles a: its part in [k, a) */
        double d = a - k;
        *mass += m->n[k] * d;
        *cost += m->n[k] * d * d * d / 3;
    }
}

/* The same for the values above position b. */
static void clipped_above(const moments *m, double b, double *mass, double *cost)
{
    int B = m->bins, k = b <= 0 ? 0 : b >= B ? B : (int)ceil(b); /* bins [k, B) lie wholly above */
    double n0 = m->p0[B] - m->p0[k], n1 = m->p1[B] - m->p1[k], n2 = m->p2[B] - m->p2[k];
    *mass = n0;
    *cost = b * b * n0 - 2 * b * n1 + n2;
    if (k > 0 && b < k && b > k - 1) { /* bin k - 1 straddles b: its part in [b, k) */
        double d = k - b;
        *mass += m->n[k - 1] * d;
        *cost += m->n[k - 1] * d * d * d / 3;
    }
}

/* One end of a candidate range: its position, and the count and the cost of
 * the values it clips. */
typedef struct clip_end {
    double at, mass, cost;
} clip_end;

/* The candidate lower ends: every bin edge below real 0, then 0 itself
 * (pare_qparams_choose widens any range to hold 0, so an end above 0 is
 * an end at 0). Upper ends mirror them. Returns how many. */
static int candidate_ends(const moments *m, double zero, int upper, clip_end *out)
{
    int n = 0, B = m->bins;
    for (int s = 0; s <= B; s++) {
        double at = upper ? B - s : s;
        int past_zero = upper ? at <= zero : at >= zero;
        if (past_zero) at = zero;
        out[n].at = at;
        if (upper)
            clipped_above(m, at, &out[n].mass, &out[n].cost);
        else
            clipped_below(m, at, &out[n].mass, &out[n].cost);
        n++;
        if (past_zero) break;
    }
    return n;
}

/* Exhaustive search over every pair of candidate ends (O(bins^2), each pair
 * a few operations): expected squared error = clipping cost of both ends +
 * step^2 / 12 for every value between them, step = width / (2^bits - 1).
 * Values exactly 0 are left out: 0 is always exactly representable. */
static void best_range(const pare_observer *o, double *lo, double *hi)
{
    int B = o->bins;
    double *n = pare_alloc((size_t)B * sizeof *n);
    for (int i = 0; i < B; i++) n[i] = (double)o->hist[i];
    double zero = zero_position(o), zb = bin_at(position(o, 0.0f), o->level) - o->first; /* as the update bins 0 */
    if (zb >= 0 && zb < B) n[(int)zb] = fmax(n[(int)zb] - (double)o->zeros, 0); /* every zero lies in 0's bin */
    moments m;
    moments_init(&m, n, B);
    clip_end *lows = pare_alloc(2 * ((size_t)B + 1) * sizeof *lows), *highs = lows + B + 1;
    int n_low = candidate_ends(&m, zero, 0, lows), n_high = candidate_ends(&m, zero, 1, highs);
    double total = m.p0[B], levels = ldexp(1.0, o->bits) - 1, k = 1 / (12 * levels * levels);
    double best = INFINITY;
    *lo = lows[0].at;
    *hi = highs[0].at;
    for (int i = 0; i < n_low; i++)
        for (int j = 0; j < n_high; j++) {
            double width = highs[j].at - lows[i].at;
            if (!(width > 0)) continue;
            double inside = total - lows[i].mass - highs[j].mass;
            double err = lows[i].cost + highs[j].cost + k * width * width * (inside > 0 ? inside : 0);
            if (err < best) { /* strict: ties keep the wider range, met first */
                best = err;
                *lo = lows[i].at;
                *hi = highs[j].at;
            }
        }
    pare_free(lows);
    pare_free(m.p0);
    pare_free(n);
}

/* Where, within bin i, the values reach `target` when `seen` lie before
 * the bin: its c values spread evenly over it, except the exact zeros
 * (`zeros`, all of them in this bin when zero_at, 0's place in it, is in
 * [0, 1)), which sit at 0. A quantile inside a ReLU's spike of zeros is 0. */
static double within_bin(double target, double seen, double c, double zeros, double zero_at)
{
    if (!(zero_at >= 0 && zero_at < 1) || zeros <= 0) return (target - seen) / c;
    double spread = c - zeros, before = spread * zero_at;
    if (seen + before >= target) return (target - seen) / spread; /* spread > 0 here */
    if (seen + before + zeros >= target || spread <= 0) return zero_at;
    return zero_at + (target - seen - before - zeros) / spread;
}

/* The position below which a share q of the values lie, interpolated
 * within its bin. */
static double quantile_position(const pare_observer *o, double q)
{
    double target = q * (double)o->binned, seen = 0, zero = zero_position(o);
    for (int i = 0; i < o->bins; i++) {
        double c = (double)o->hist[i];
        if (c > 0 && seen + c >= target) return i + within_bin(target, seen, c, (double)o->zeros, zero - i);
        seen += c;
    }
    return o->bins;
}

static int histogram_range(const pare_observer *o, float *min, float *max)
{
    if (o->binned == 0) return pare_set_error("the histogram observer has seen no finite values");
    double lo, hi;
    if (o->min == o->max) {
        *min = o->min;
        *max = o->max;
        return 0;
    }
    if (o->kind == PARE_OBSERVE_HISTOGRAM) {
        best_range(o, &lo, &hi);
    } else {
        double p = (double)o->percentile / 100;
        lo = quantile_position(o, 1 - p);
        hi = quantile_position(o, p);
    }
    double zero = zero_position(o);
    /* an end found at 0 is 0 exactly; neither lies past what was seen */
    float a = lo == zero ? 0.0f : real_at(o, lo), b = hi == zero ? 0.0f : real_at(o, hi);
    *min = fminf(fmaxf(a, o->min), o->max);
    *max = fmaxf(fminf(b, o->max), *min);
    return 0;
}

int pare_observer_range(const pare_observer *o, float *min, float *max)
{
    if (o->count == 0) return pare_set_error("the observer has seen no values");
    if (is_histogram(o->kind)) return histogram_range(o, min, max);
    *min = o->min;
    *max = o->max;
    return 0;
}

void pare_observer_release(pare_observer *o)
{
    pare_free(o->hist); /* NULL for min/max observers, which own no memory */
    o->hist = NULL;
}
