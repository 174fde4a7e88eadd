#include "kernels.h"

/* ---- one decode layer in one call ----------------------------------------------------------------------------- */
/* One sequence's one new token through a whole layer: norm, attention input, rope, the cache row, absorbed
 * attention over the latent cache, output projection, norm, router and experts, each by the products above. A decode
 * step of `tiny` is a chain of tiny products, and at V2-Lite's shape the PyTorch calls around the products (about
 * fifty a layer) cost a fifth of the step; here a layer is one call. The arithmetic is the runner's, step for step
 * (engine/runner.py), in float32. */

typedef struct {  /* y (O) = W x (I) */
    int32_t kind;  /* PROJ_* */
    int32_t group;  /* int4: inputs per scale */
    int64_t n_out, n_in;
    const void *w;  /* f32 (O, I) rows, or (I, O) when PROJ_F32_T; int8 (O, I); int4 (O, I / 2) */
    const void *scale;  /* int8: (O,) float32; int4: (O, I / G) float16 */
} proj_desc;

enum { PROJ_F32 = 0, PROJ_F32_T = 1, PROJ_INT8 = 2, PROJ_INT4 = 3 };

typedef struct {  /* SwiGLU experts as the experts kernels take them; n_experts 0: none */
    int32_t kind;  /* PROJ_F32 (down stored transposed), PROJ_INT8 or PROJ_INT4 */
    int32_t group;
    int64_t n_experts, f;
    const void *gate_up, *gate_up_scale, *down, *down_scale;
} experts_desc;

typedef struct {
    int64_t d, heads, nope, rope, v, lat;  /* model width; per head: nope, rope and value widths; latent width */
    float eps, kv_eps, softmax_scale, routed_scale;
    int32_t interleave;  /* rope pairs (x0, x1), (x2, x3), ... rather than halves */
    int32_t int8_heads;  /* the absorbed W_UK, W_UV as int8 rows (else float32 views of kv_b_proj) */
    const float *input_norm, *kv_norm, *post_norm;  /* RMSNorm weights */
    proj_desc attn_in;  /* D -> [q (H * (nope + rope)) | c_KV (lat) | k_rope (rope)] */
    proj_desc o_proj;  /* H * v -> D */
    const void *uk, *uk_scale, *uv, *uv_scale;  /* int8: (H, lat, nope) + (H, lat), (H, v, lat) + (H, v); float32:
                                                   uk = kv_b_proj (H, nope + v, lat), the others NULL */
    const float *gate;  /* router (E, D) float32, or NULL for a dense MLP */
    const float *gate_bias;  /* noaux_tc's selection bias (E,), or NULL */
    int64_t top_k;
    int32_t sigmoid, norm_topk;
    experts_desc routed, shared;  /* shared: the shared experts or the dense MLP as one expert */
    int64_t q_lora;  /* low-rank queries: attn_in gives q_a (q_lora wide), normed by q_norm, then q_b; 0: none */
    float q_eps;
    const float *q_norm;
    proj_desc q_b;
    int64_t n_group, topk_group;  /* group-limited routing: only the topk_group best of n_group groups; 1, 1: none */
    int32_t group_top2;  /* a group's score: the sum of its best two (noaux_tc, masked to -inf), else its best (to 0) */
} layer_desc;

static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *y) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = w[i] * (x[i] * r);
}

/* x (R) rotated in place by the position's cos, sin (R / 2), laid out as model.apply_rope does: the pairs'
 * first members, then their second */
static void rope(float *x, const float *cos, const float *sin, int64_t r, int interleave) {
    float t[r];
    int64_t half = r / 2;
    for (int64_t j = 0; j < half; j++) {
        float x1 = interleave ? x[2 * j] : x[j], x2 = interleave ? x[2 * j + 1] : x[j + half];
        t[j] = x1 * cos[j] - x2 * sin[j];
        t[j + half] = x2 * cos[j] + x1 * sin[j];
    }
    for (int64_t j = 0; j < r; j++) x[j] = t[j];
}

/* y (B, O) = x (B, I) W.T */
static int proj(const proj_desc *p, const float *x, int64_t b, float *y) {
    switch (p->kind) {
    case PROJ_F32:
    case PROJ_F32_T:
        seekmoe_f32_gemv(x, p->w, y, b, p->n_in, p->n_out, p->kind == PROJ_F32_T);
        return 0;
    case PROJ_INT8:
        seekmoe_int8_gemv(x, p->w, p->scale, y, b, p->n_in, p->n_out);
        return 0;
    case PROJ_INT4:
        return seekmoe_int4_gemv(x, p->w, p->scale, y, b, p->n_in, p->n_out, p->group) ? -2 : 0;
    }
    return -1;
}

/* y (D) += the experts' output for x: K chosen ones with their weights, or the one expert with weight 1 */
static int experts(const experts_desc *e, const float *x, int64_t d, const int64_t *idx, const float *weight,
                   int64_t k, float *y) {
    float *h = malloc(sizeof(float) * k * e->f);
    if (h == NULL) return -2;
    int status = 0;
    if (e->kind == PROJ_INT4)
        status = seekmoe_int4_experts(x, d, e->f, e->n_experts, e->gate_up, e->gate_up_scale, e->down, e->down_scale,
                                      e->group, idx, weight, k, y, h);
    else if (e->kind == PROJ_INT8)
        status = seekmoe_int8_experts(x, d, e->f, e->n_experts, e->gate_up, e->gate_up_scale, e->down, e->down_scale,
                                      idx, weight, k, y, h);
    else
        status = seekmoe_f32_experts(x, d, e->f, e->n_experts, e->gate_up, e->down, idx, weight, k, y, h);
    free(h);
    return status;
}

/* int4 pairs sorted by expert (as experts_grouped takes them): out (P, D) = weight[p] * SwiGLU_e(x[p]), expert by
 * expert, each of its two products over all its rows in one int4_gemv (the threads split the weight rows), as the
 * runner's Int4RoutedExperts.expert runs them. h: scratch for P * 3F floats. */
static int int4_grouped(const experts_desc *e, const float *xs, int64_t d, const int64_t *used, const int64_t *start,
                        int64_t n_used, const float *ws, float *h, float *out) {
    int64_t f = e->f, g = e->group;
    for (int64_t u = 0; u < n_used; u++) {
        int64_t ex = used[u], r0 = start[u], m_rows = start[u + 1] - r0;
        float *act = h + m_rows * 2 * f;
        proj_desc gate_up = {PROJ_INT4, (int32_t)g, 2 * f, d, (const uint8_t *)e->gate_up + ex * 2 * f * (d / 2),
                             (const uint16_t *)e->gate_up_scale + ex * 2 * f * (d / g)};
        proj_desc down = {PROJ_INT4, (int32_t)g, d, f, (const uint8_t *)e->down + ex * d * (f / 2),
                          (const uint16_t *)e->down_scale + ex * d * (f / g)};
        int status = proj(&gate_up, xs + r0 * d, m_rows, h);
        if (status) return status;
        swiglu_act(h, m_rows, f, NULL, act);
        if ((status = proj(&down, act, m_rows, out + r0 * d))) return status;
        for (int64_t m = r0; m < r0 + m_rows; m++)
            for (int64_t j = 0; j < d; j++) out[m * d + j] *= ws[m];
    }
    return 0;
}

/* y (B, D) += each row's routed experts (idx, weight (B, K)). One row: the experts kernel. Several: the (row,
 * expert) pairs sorted by expert (counting sort; stable, so a row's experts are added in the order of their index,
 * as the runner's index_add adds them), every used expert read once for all its rows (experts_grouped; int4,
 * int4_grouped). */
static int experts_rows(const experts_desc *e, const float *x, int64_t b, int64_t d, const int64_t *idx,
                        const float *weight, int64_t k, float *y) {
    if (b == 1) return experts(e, x, d, idx, weight, k, y);
    int status = 0;
    int64_t ne = e->n_experts, np = b * k;
    int64_t *ints = malloc(sizeof(int64_t) * (3 * ne + 1 + np));
    float *xs = malloc(sizeof(float) * np * (2 * d + 1 + (e->kind == PROJ_INT4 ? 3 * e->f : 0)));
    if (ints == NULL || xs == NULL) {
        free(ints);
        free(xs);
        return -2;
    }
    int64_t *fill = ints, *used = fill + ne, *start = used + ne, *row_of = start + ne + 1;
    float *out = xs + np * d, *ws = out + np * d;
    int64_t n_used = 0, at = 0;
    for (int64_t i = 0; i < ne; i++) fill[i] = 0;
    for (int64_t p = 0; p < np; p++) fill[idx[p]]++;
    for (int64_t i = 0; i < ne; i++) {
        int64_t count = fill[i];
        if (count == 0) continue;
        used[n_used] = i;
        start[n_used++] = at;
        fill[i] = at;  /* from here on: where expert i's next pair goes */
        at += count;
    }
    start[n_used] = np;
    for (int64_t p = 0; p < np; p++) {
        int64_t q = fill[idx[p]]++;
        row_of[q] = p / k;
        ws[q] = weight[p];
        for (int64_t j = 0; j < d; j++) xs[q * d + j] = x[(p / k) * d + j];
    }
    if (e->kind == PROJ_INT4)
        status = int4_grouped(e, xs, d, used, start, n_used, ws, ws + np, out);
    else if (e->kind == PROJ_INT8)
        status = seekmoe_int8_experts_grouped(xs, d, e->f, ne, e->gate_up, e->gate_up_scale, e->down, e->down_scale,
                                              used, start, n_used, ws, out);
    else
        status = seekmoe_f32_experts_grouped(xs, d, e->f, ne, e->gate_up, e->down, used, start, n_used, ws, out);
    if (!status)
        for (int64_t q = 0; q < np; q++)
            for (int64_t j = 0; j < d; j++) y[row_of[q] * d + j] += out[q * d + j];
    free(ints);
    free(xs);
    return status;
}

/* y (B, D) += one SwiGLU (the shared experts or a dense MLP, stored as one expert) over B rows. One row: the
 * experts kernel. Several: its products over all rows (the threads split the weight rows, where a grouped call
 * would give the one expert to one thread), silu(gate) * up between them. */
static int mlp_rows(const experts_desc *e, const float *x, int64_t b, int64_t d, float *y) {
    static const int64_t first = 0;
    static const float whole = 1.0f;
    if (b == 1) return experts(e, x, d, &first, &whole, 1, y);
    int64_t f = e->f;
    float *h = malloc(sizeof(float) * b * (3 * f + d));
    if (h == NULL) return -2;
    float *act = h + b * 2 * f, *out = act + b * f;
    /* a float32 down projection is stored transposed (F, D) */
    proj_desc gate_up = {e->kind, e->group, 2 * f, d, e->gate_up, e->gate_up_scale};
    proj_desc down = {e->kind == PROJ_F32 ? PROJ_F32_T : e->kind, e->group, d, f, e->down, e->down_scale};
    int status = proj(&gate_up, x, b, h);
    if (!status) {
        swiglu_act(h, b, f, NULL, act);
        status = proj(&down, act, b, out);
    }
    if (!status)
        for (int64_t i = 0; i < b * d; i++) y[i] += out[i];
    free(h);
    return status;
}

/* float32 absorbed products per head, from kv_b_proj (H, nope + v, lat), for M rows: the queries q_nope (H, M, nope)
 * into latent space (H, M, lat) as sums of W_UK's rows, or the latent outputs (H, M, lat) to values (H, M, v) as
 * dot products with W_UV's rows. The threads split the heads. */
typedef struct {
    const float *x, *w;
    float *y;
    int64_t heads, m_rows, nope, v, lat, values;
} heads_args;

static void f32_heads_job(void *p, int part, int parts) {
    const heads_args *a = p;
    int64_t n = a->nope, lat = a->lat, m_rows = a->m_rows;
    for (int64_t h = part; h < a->heads; h += parts) {  /* a call too small to split runs as one part */
        const float *w = a->w + h * (n + a->v) * lat;
        if (a->values && m_rows == 1) {
            for (int64_t j = 0; j < a->v; j++) a->y[h * a->v + j] = dot1_f32(a->x + h * lat, w + (n + j) * lat, lat);
            continue;
        }
        if (a->values) {
            tiles_f32(a->x + h * m_rows * lat, m_rows, lat, w + n * lat, lat, 0, a->v, NULL, a->y + h * m_rows * a->v,
                      a->v);
            continue;
        }
        for (int64_t m = 0; m < m_rows; m++) {
            float *y = a->y + (h * m_rows + m) * lat;
            const float *x = a->x + (h * m_rows + m) * n;
            for (int64_t j = 0; j < lat; j++) y[j] = 0.0f;
            for (int64_t j = 0; j < n; j += 4) axpy4(y, x + j, w + j * lat, n - j < 4 ? (int)(n - j) : 4, lat, lat);
        }
    }
}

/* the K best of n values (or fewer where n < K), ties to the lowest index: K passes, K being small */
static void top_k(const float *c, int64_t n, int64_t k, int64_t *idx) {
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < n; i++) {
            int taken = 0;
            for (int64_t m = 0; m < j; m++) taken |= idx[m] == i;
            if (!taken && (best < 0 || c[i] > c[best])) best = i;
        }
        idx[j] = best;
    }
}

/* the router's K experts for a row: scores (E), given as the logits gate . h, by softmax or sigmoid; the K best
 * (plus noaux_tc's bias, which steers the choice but not the weights; within the best groups where routing is
 * group-limited), weights normalised over the K where asked, then scaled (model.Gate). choice: scratch for E. */
static void route(const layer_desc *L, float *scores, float *choice, int64_t *idx, float *weight) {
    int64_t e = L->routed.n_experts, k = L->top_k;
    if (L->sigmoid) {
        for (int64_t i = 0; i < e; i++) scores[i] = 1.0f / (1.0f + expf(-scores[i]));
    } else {
        float m = -INFINITY, z = 0.0f;
        for (int64_t i = 0; i < e; i++) m = scores[i] > m ? scores[i] : m;
        for (int64_t i = 0; i < e; i++) z += (scores[i] = expf(scores[i] - m));
        for (int64_t i = 0; i < e; i++) scores[i] /= z;
    }
    for (int64_t i = 0; i < e; i++) choice[i] = scores[i] + (L->gate_bias ? L->gate_bias[i] : 0.0f);
    if (L->n_group > 1) {
        int64_t g = L->n_group, per = e / g, kept[g];
        float best[g];
        for (int64_t i = 0; i < g; i++) {
            const float *c = choice + i * per;
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int64_t j = 0; j < per; j++) {
                if (c[j] > b1) b2 = b1, b1 = c[j];
                else if (c[j] > b2) b2 = c[j];
            }
            best[i] = L->group_top2 ? b1 + b2 : b1;
        }
        top_k(best, g, L->topk_group, kept);
        for (int64_t i = 0; i < g; i++) {
            int keep = 0;
            for (int64_t j = 0; j < L->topk_group; j++) keep |= kept[j] == i;
            if (!keep)
                for (int64_t j = 0; j < per; j++) choice[i * per + j] = L->group_top2 ? -INFINITY : 0.0f;
        }
    }
    top_k(choice, e, k, idx);
    float sum = 0.0f;
    for (int64_t j = 0; j < k; j++) sum += weight[j] = scores[idx[j]];
    for (int64_t j = 0; j < k; j++)
        weight[j] = (L->norm_topk && k > 1 ? weight[j] / (sum + 1e-20f) : weight[j]) * L->routed_scale;
}

/* B sequences' new tokens through the layer L describes. Returns 0; -1 for a bad descriptor, slot or offsets, -2
 * without memory. x (B, D) is updated in place; kv is the layer's cache (kv_rows, lat + rope), or NULL and kv8, meta
 * its int8 cache (kv_rows, lat + rope), (kv_rows, LATENT_META); cos, sin (B, rope / 2)
 * are the tokens' positions'; sequence i's cache rows are slots[offsets[i]..offsets[i + 1]) of the n_slots, in
 * order, its new token's last, whose row is written; counts (E) int64, or NULL, gains one for each chosen expert.
 * One row runs as it always has (the experts kernel per token); several share each product (tiles), and their
 * routed experts are grouped by expert. */
API int seekmoe_decode_layer(const layer_desc *L, float *x, int64_t b, float *kv, int8_t *kv8, float *meta,
                             int64_t kv_rows, const float *cos, const float *sin, const int64_t *slots, int64_t n_slots,
                             const int64_t *offsets, int64_t *counts) {
    int64_t d = L->d, H = L->heads, nope = L->nope, r = L->rope, lat = L->lat, w = lat + r, v = L->v, hr = r / 2;
    int64_t qw = H * (nope + r), k = L->gate ? L->top_k : 0, e = L->routed.n_experts;
    int64_t qa = L->q_lora ? L->q_lora : qw;  /* attn_in's query part */
    if (b < 1 || k > e || L->attn_in.n_out != qa + w
        || L->attn_in.n_in != d || L->o_proj.n_in != H * v || L->o_proj.n_out != d || r % 2 || r > 256
        || (L->q_lora && (L->q_b.n_in != L->q_lora || L->q_b.n_out != qw))
        || (L->n_group > 1 && (e % L->n_group || L->topk_group < 1 || L->topk_group > L->n_group || L->n_group > 256)))
        return -1;
    if (offsets[0] != 0 || offsets[b] != n_slots || (kv == NULL) == (kv8 == NULL) || (kv8 != NULL && meta == NULL))
        return -1;
    for (int64_t i = 0; i < b; i++)
        if (offsets[i + 1] <= offsets[i]) return -1;  /* every sequence has its new token's row */
    for (int64_t i = 0; i < n_slots; i++)  /* before anything is written */
        if (slots[i] < 0 || slots[i] >= kv_rows) return -1;
    /* per row: h (D), y (D), t (attn_in's outputs), the queries (H (nope + R)), q_a (q_lora), q_nope (H nope),
     * q_lat (H lat), q (H w), o and o by head (H lat each), values and values by head (H v each), the router's
     * scores and choice (E each), weights (K), the cache row (w, for the int8 cache) */
    int64_t per = 2 * d + qa + w + qw + qa + H * nope + H * lat + H * w + 2 * H * lat + 2 * H * v + 2 * e + k + w;
    float *buf = malloc(sizeof(float) * (b * per + 1));
    int64_t *idx = malloc(sizeof(int64_t) * (b * k + 1));
    if (buf == NULL || idx == NULL) {
        free(buf);
        free(idx);
        return -2;
    }
    float *h = buf, *y = h + b * d, *t = y + b * d, *tq = t + b * (qa + w), *qa_rows = tq + b * qw;
    float *qn = qa_rows + b * qa, *ql = qn + b * H * nope, *q = ql + b * H * lat, *o = q + b * H * w;
    float *oh = o + b * H * lat, *vh = oh + b * H * lat, *vals = vh + b * H * v, *scores = vals + b * H * v;
    float *choice = scores + b * e, *weight = choice + b * e, *rows = weight + b * k;
    int status;

    /* attention: [q | c_KV | k_rope] from the normed input; each cache row [norm(c_KV) | rope(k_rope)] */
    for (int64_t i = 0; i < b; i++) rms_norm(x + i * d, L->input_norm, d, L->eps, h + i * d);
    if ((status = proj(&L->attn_in, h, b, t))) goto done;
    for (int64_t i = 0; i < b; i++) {
        const float *ti = t + i * (qa + w);
        int64_t slot = slots[offsets[i + 1] - 1];
        float *row = kv != NULL ? kv + slot * w : rows + i * w;
        rms_norm(ti + qa, L->kv_norm, lat, L->kv_eps, row);
        for (int64_t j = 0; j < r; j++) row[lat + j] = ti[qa + lat + j];
        rope(row + lat, cos + i * hr, sin + i * hr, r, L->interleave);
        if (kv8 != NULL) seekmoe_quantize_latent(row, 1, w, lat, kv8 + slot * w, meta + slot * LATENT_META);
        if (L->q_lora)
            rms_norm(ti, L->q_norm, qa, L->q_eps, qa_rows + i * qa);  /* the low-rank query, normed */
        else
            for (int64_t j = 0; j < qw; j++) tq[i * qw + j] = ti[j];
    }
    if (L->q_lora && (status = proj(&L->q_b, qa_rows, b, tq))) goto done;  /* up to every head's */
    for (int64_t i = 0; i < b; i++)
        for (int64_t hd = 0; hd < H; hd++) {  /* per head: q_nope aside (by head), q_rope rotated into q's last R */
            const float *th = tq + i * qw + hd * (nope + r);
            float *qr = q + (i * H + hd) * w + lat;
            for (int64_t j = 0; j < nope; j++) qn[(hd * b + i) * nope + j] = th[j];
            for (int64_t j = 0; j < r; j++) qr[j] = th[nope + j];
            rope(qr, cos + i * hr, sin + i * hr, r, L->interleave);
        }
    /* absorbed: the queries in latent space, attention over the cached rows, the latent outputs to values */
    if (L->int8_heads) {
        seekmoe_int8_gemv_heads(qn, L->uk, L->uk_scale, ql, H, b, nope, lat);
    } else {
        heads_args a = {qn, L->uk, ql, H, b, nope, v, lat, 0};
        pool_run(f32_heads_job, &a, (int)H, 4 * H * nope * lat);
    }
    for (int64_t hd = 0; hd < H; hd++)
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < lat; j++) q[(i * H + hd) * w + j] = ql[(hd * b + i) * lat + j];
    if ((status = attend(q, kv, kv8, meta, kv_rows, w, lat, H, slots, offsets, b, L->softmax_scale, o))) goto done;
    for (int64_t i = 0; i < b; i++)  /* (B, H, lat) -> (H, B, lat) */
        for (int64_t hd = 0; hd < H; hd++)
            for (int64_t j = 0; j < lat; j++) oh[(hd * b + i) * lat + j] = o[(i * H + hd) * lat + j];
    if (L->int8_heads) {
        seekmoe_int8_gemv_heads(oh, L->uv, L->uv_scale, vh, H, b, lat, v);
    } else {
        heads_args a = {oh, L->uk, vh, H, b, nope, v, lat, 1};
        pool_run(f32_heads_job, &a, (int)H, 4 * H * v * lat);
    }
    for (int64_t hd = 0; hd < H; hd++)  /* (H, B, v) -> (B, H v) */
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < v; j++) vals[(i * H + hd) * v + j] = vh[(hd * b + i) * v + j];
    if ((status = proj(&L->o_proj, vals, b, h))) goto done;
    for (int64_t i = 0; i < b * d; i++) x[i] += h[i];

    /* the MLP: routed experts and shared ones (or a dense MLP as one expert) added together */
    for (int64_t i = 0; i < b; i++) rms_norm(x + i * d, L->post_norm, d, L->eps, h + i * d);
    for (int64_t i = 0; i < b * d; i++) y[i] = 0.0f;
    if (k > 0) {
        seekmoe_f32_gemv(h, L->gate, scores, b, d, e, 0);  /* the router's logits, every row at once */
        for (int64_t i = 0; i < b; i++) route(L, scores + i * e, choice + i * e, idx + i * k, weight + i * k);
        if (counts != NULL)
            for (int64_t j = 0; j < b * k; j++) counts[idx[j]]++;
        if ((status = experts_rows(&L->routed, h, b, d, idx, weight, k, y))) goto done;
    }
    if (L->shared.n_experts > 0 && (status = mlp_rows(&L->shared, h, b, d, y))) goto done;
    for (int64_t i = 0; i < b * d; i++) x[i] += y[i];
done:
    free(buf);
    free(idx);
    return status;
}
