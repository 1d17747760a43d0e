/* Response framing on the data plane's upstream sockets: where each HTTP/1.1 response ends.
 *
 * Included by sk_skb.c only (bpf/codegen.py puts it before the entry). The kernel forwards
 * responses without changing them; it follows their framing so that an answer from anywhere else
 * (the agent's local reply, Envoy after a punt, another cluster's upstream) is not written to the
 * client before the responses to earlier forwarded requests have ended (RFC 9112 9.3.2, and what
 * Envoy does; docs/bugs/0008). The request path counts forwards (`sent`, and which were HEAD); this
 * counts ends (`done`). A connection is "answered" when done == sent.
 *
 * What is followed: a response head that starts at a segment boundary or right after the previous
 * response, lies whole within one segment's first RESP_WINDOW bytes, starts "HTTP/1.1 NNN", and is
 * framed by one plain Content-Length, by chunked encoding (one Transfer-Encoding: chunked, no
 * Content-Length; size lines of hex digits and CRLF, each whole within a segment; no trailer
 * fields), by a status without a body (1xx interim, 204, 304) or by the request being a HEAD.
 * Anything else (a body to the close, a split head or size line, a chunk extension, trailers, 101,
 * a second Content-Length, bytes nobody asked for, bytes from an upstream other than the one the
 * requests in flight went to) sets `untracked` for the rest of the connection: from then on answers
 * are written without waiting (the behaviour before this tracker), which the agent counts.
 * `untracked` never claims an end, so it cannot reorder more than before.
 *
 * A complete head also says whether the upstream will close its connection after the response
 * (not HTTP/1.1; a Connection header other than one `keep-alive`): the connection is then marked
 * (`upstream_closed`) and no later request is forwarded to that upstream (docs/bugs/0011). Heads
 * after the framing is lost are not read: there only the request path's socket check remains.
 *
 * Each program run takes one step (a body's remainder, or one head) and tail-calls itself for
 * the next response in the same segment; a step that cannot tail-call (the kernel allows 33)
 * leaves the connection untracked too.
 */
#define R_HEAD 0        /* the next byte starts a response head */
#define R_BODY 1        /* rleft bytes of a Content-Length body left */
#define R_CHUNK_SIZE 2  /* the next byte starts a chunk-size line */
#define R_CHUNK_DATA 3  /* rleft bytes of chunk data and its CRLF left */
#define R_CHUNK_END 4   /* after the last chunk: the CRLF that ends the response */

#define RESP_WINDOW 1024
#define RESP_BUF (2 * RESP_WINDOW)
#define RESP_LINES 32

struct resp_scratch {
    u8 buf[RESP_BUF];
    u32 starts[RESP_LINES]; /* starts[k]: first byte of head line k (k >= 1); [0] is a dump slot */
    u32 stop;               /* where the head scan stopped, */
    u32 lines;              /* the line feeds it saw, */
    u32 last4;              /* and the last four bytes it read */
};

BPF_PERCPU_ARRAY(resp_scratch, struct resp_scratch, 1);

#define RBYTE(s, x) ((u64)(s)->buf[(x) & (RESP_BUF - 1)])

/* The 8 bytes at `at`, as a little-endian word: one unaligned load (allowed on x86's JIT; the
 * map value goes on past buf, so the last bytes of the mask stay inside it) in place of eight. */
static __always_inline u64 l7fp_resp_word(const struct resp_scratch *s, u64 at)
{
    return *(const u64 *)&s->buf[at & (RESP_BUF - 1)];
}

/* An 8-character literal as l7fp_resp_word reads it; and the case bit (0x20) of each of its
 * letters, so that letters compare without case and other bytes exactly. `text` is a literal and
 * the loops unrolled: both fold to constants. */
static __always_inline u64 l7fp_text_word(const char *text)
{
    u64 w = 0;
#pragma unroll
    for (int k = 0; k < 8; k++)
        w |= (u64)(u8)text[k] << (8 * k);
    return w;
}

static __always_inline u64 l7fp_case_bits(const char *text)
{
    u64 m = 0;
#pragma unroll
    for (int k = 0; k < 8; k++)
        if ((text[k] | 0x20) >= 'a' && (text[k] | 0x20) <= 'z')
            m |= 0x20ULL << (8 * k);
    return m;
}

/* 0 iff the 8 bytes at `at` spell `text` (letters in either case). */
#define L7FP_DIFF8(s, at, text) \
    ((l7fp_resp_word(s, at) | l7fp_case_bits(text)) ^ (l7fp_text_word(text) | l7fp_case_bits(text)))

/* The value of a Content-Length header whose value (after the colon) starts at `at`: optional
 * spaces or tabs, 1 to 15 digits, optional spaces or tabs, CR. ~0 for anything else. Branch-free:
 * three masks say which part the byte is in, and every byte outside them sets `bad`. */
static __always_inline u64 l7fp_resp_length(const struct resp_scratch *s, u64 at)
{
    u64 lead = 1, digits = 0, trail = 0, ended = 0, bad = 0, count = 0, value = 0;
    for (u64 k = 0; k < 24; k++) {
        u64 b = RBYTE(s, at + k);
        u64 sp = L7FP_ZERO(b ^ ' ') | L7FP_ZERO(b ^ '\t');
        u64 dg = L7FP_IN(b, '0', '9');
        u64 cr = L7FP_ZERO(b ^ '\r');
        u64 live = lead | digits | trail;
        bad |= (lead & (1 ^ (sp | dg))) | (digits & (1 ^ (sp | dg | cr))) | (trail & (1 ^ (sp | cr)));
        ended |= (digits | trail) & cr;
        u64 next_digits = (lead | digits) & dg;
        trail = (digits | trail) & sp & live;
        lead = lead & sp;
        digits = next_digits;
        count += digits;
        value += digits * (value * 9 + b - '0');
    }
    if (bad || !ended || count == 0 || count > 15)
        return ~0ULL;
    return value;
}

/* A chunk-size line at s->buf[0..take): its value, and its length (through the LF) in *line; ~0
 * for anything but 1 to 15 hex digits then CRLF (a chunk extension, spaces: not followed). */
static __always_inline u64 l7fp_chunk_size(const struct resp_scratch *s, u64 take, u64 *line)
{
    u64 digits = 1, count = 0, value = 0, end = 0, bad = 0;
    for (u64 k = 0; k < 24; k++) {
        u64 b = RBYTE(s, k);
        u64 dg = L7FP_IN(b, '0', '9');
        u64 lo = L7FP_IN(b, 'a', 'f');
        u64 up = L7FP_IN(b, 'A', 'F');
        u64 hex = dg | lo | up;
        u64 d = dg * (b - '0') + lo * (b - 'a' + 10) + up * (b - 'A' + 10);
        u64 crlf = L7FP_ZERO(b ^ '\r') & L7FP_ZERO(RBYTE(s, k + 1) ^ '\n');
        u64 stop = digits & (1 ^ hex);
        bad |= stop & (1 ^ crlf);
        end |= (stop & crlf) * (k + 2);
        digits &= hex;
        count += digits;
        value = value * (1 + 15 * digits) + digits * d;
    }
    if (bad || end == 0 || end > take || count == 0 || count > 15)
        return ~0ULL;
    *line = end;
    return value;
}

/* Where a header value starts, the colon's next byte being `at`: past up to two spaces or tabs. */
static __always_inline u64 l7fp_value_at(const struct resp_scratch *s, u64 at)
{
    u64 sp0 = L7FP_ZERO(RBYTE(s, at) ^ ' ') | L7FP_ZERO(RBYTE(s, at) ^ '\t');
    u64 sp1 = sp0 & (L7FP_ZERO(RBYTE(s, at + 1) ^ ' ') | L7FP_ZERO(RBYTE(s, at + 1) ^ '\t'));
    return at + sp0 + sp1;
}

/* One head at s->buf[0..take): its length and the body length it announces, or 0 (untracked);
 * *chunked: the body is chunked. *closes: the upstream may close its connection after this
 * response (anything but HTTP/1.1; a Connection header other than one `keep-alive`), so no later
 * request may be forwarded to it: Envoy drops such a connection from its pool after the response
 * (docs/bugs/0011). Set whenever a head is complete in the window, tracked or not. */
static __always_inline u64 l7fp_resp_head(struct resp_scratch *s, u64 take, u64 is_head, u64 *body, u64 *interim,
                                          u64 *chunked, u64 *closes)
{
    u64 w = 0, lines = 0, i;
    for (i = 0; i < RESP_WINDOW; i++) {
        u64 b = RBYTE(s, i);
        w = ((w << 8) | b) & 0xffffffff;
        u64 lf = L7FP_ZERO(b ^ '\n');
        lines += lf;
        s->starts[(lines * lf) & (RESP_LINES - 1)] = i + 1;
        if (L7FP_ZERO(w ^ 0x0d0a0d0a) | L7FP_ZERO(b))
            break;
    }
    /* The scan's results go through the map and back: the verifier then knows nothing of the exit
     * the scan took, and checks what follows once instead of once per possible exit (the whole
     * program, before chunked framing: 667k instructions processed without this, 137k with it). */
    s->stop = i;
    s->lines = lines;
    s->last4 = w;
    i = *(volatile u32 *)&s->stop;
    lines = *(volatile u32 *)&s->lines;
    w = *(volatile u32 *)&s->last4;
    if (w != 0x0d0a0d0a || i >= take || lines >= RESP_LINES)
        return 0;
    u64 length = i + 1;
    *closes = 1;
    if (L7FP_DIFF8(s, 0, "HTTP/1.1") || RBYTE(s, 8) != ' ' || RBYTE(s, 12) != ' ')
        return 0;
    u64 d0 = RBYTE(s, 9) - '0', d1 = RBYTE(s, 10) - '0', d2 = RBYTE(s, 11) - '0';
    if (d0 > 9 || d1 > 9 || d2 > 9)
        return 0;
    u64 status = d0 * 100 + d1 * 10 + d2;
    u64 cl_count = 0, cl_at = 0, te_count = 0, te_at = 0, co_count = 0, co_at = 0;
    /* Header lines are 1 .. lines - 2 (the last two line feeds end the head). Every slot is
     * compared, branch-free, and `live` drops the ones past the head: a branch on `lines` here
     * would fork the verifier's state on each line (over its 1M budget). */
    for (u64 k = 1; k < RESP_LINES; k++) {
        u64 at = s->starts[k & (RESP_LINES - 1)];
        u64 live = L7FP_LT(k + 1, lines);
        u64 cl = L7FP_ZERO(L7FP_DIFF8(s, at, "content-") | L7FP_DIFF8(s, at + 7, "-length:")) & live;
        cl_count += cl;
        cl_at |= (at + 15) & (0 - cl);
        u64 te = L7FP_ZERO(L7FP_DIFF8(s, at, "transfer") | L7FP_DIFF8(s, at + 8, "-encodin") |
                           L7FP_DIFF8(s, at + 10, "ncoding:")) & live;
        te_count += te;
        te_at |= (at + 18) & (0 - te);
        u64 co = L7FP_ZERO(L7FP_DIFF8(s, at, "connecti") | L7FP_DIFF8(s, at + 3, "nection:")) & live;
        co_count += co;
        co_at |= (at + 11) & (0 - co);
    }
    /* Branch-free, as above: a branch here doubles what the verifier walks. */
    u64 v = l7fp_value_at(s, co_at);
    u64 keep_alive = L7FP_ZERO(L7FP_DIFF8(s, v, "keep-ali") | L7FP_DIFF8(s, v + 3, "p-alive\r"));
    *closes = (1 ^ L7FP_ZERO(co_count)) & (1 ^ (L7FP_ZERO(co_count ^ 1) & keep_alive));
    *interim = 0;
    *chunked = 0;
    if (status == 101 || status < 100)
        return 0;
    if (status < 200) { /* an interim response: the final one follows */
        *interim = 1;
        *body = 0;
        return length;
    }
    if (status == 204 || status == 304 || is_head) {
        *body = 0;
        return length;
    }
    if (te_count) { /* one Transfer-Encoding, exactly `chunked` (up to two spaces before it), no length */
        if (te_count != 1 || cl_count != 0 || L7FP_DIFF8(s, l7fp_value_at(s, te_at), "chunked\r"))
            return 0;
        *chunked = 1;
        *body = 0;
        return length;
    }
    if (cl_count != 1)
        return 0;
    u64 value = l7fp_resp_length(s, cl_at);
    if (value == ~0ULL)
        return 0;
    *body = value;
    return length;
}

/* Up to `most` bytes of the skb from `off` into s->buf, with a NUL after them: how many, or 0. */
static __always_inline u64 l7fp_resp_load(struct __sk_buff *skb, struct resp_scratch *s, u64 off, u64 most)
{
    u64 take = skb->len - off;
    if (take > most)
        take = most;
    if (take > RESP_WINDOW)
        take = RESP_WINDOW;
    s->buf[take & (RESP_BUF - 1)] = 0;
    if (take == 0 || bpf_skb_load_bytes(skb, off, s->buf, take) < 0)
        return 0;
    return take;
}

/* One framing step on this segment of an upstream's responses to `c`'s client: returns 1 when
 * another step should run (c->roff says where), 0 when the segment is done. */
static __always_inline int l7fp_resp_step(struct __sk_buff *skb, struct conn *c)
{
    u64 len = skb->len, off = c->roff;
    if (c->untracked || off >= len)
        return 0;
    if (c->rstate == R_BODY || c->rstate == R_CHUNK_DATA) { /* skipped, not read */
        u64 rest = len - off;
        if (c->rleft > rest) {
            c->rleft -= rest;
            return 0;
        }
        off += c->rleft;
        c->rleft = 0;
        if (c->rstate == R_BODY) {
            c->rstate = R_HEAD;
            c->done += 1;
        } else {
            c->rstate = R_CHUNK_SIZE;
        }
        c->roff = off;
        return off < len;
    }
    if (c->done == c->sent) { /* a response nobody asked for */
        c->untracked = 1;
        return 0;
    }
    u32 zero = 0;
    struct resp_scratch *s = resp_scratch.lookup(&zero);
    if (!s) {
        c->untracked = 1;
        return 0;
    }
    if (c->rstate == R_CHUNK_END) { /* the CRLF after the last chunk (trailer fields: not followed) */
        u64 take = l7fp_resp_load(skb, s, off, 2);
        if (take < 2 || RBYTE(s, 0) != '\r' || RBYTE(s, 1) != '\n') {
            c->untracked = 1;
            return 0;
        }
        off += 2;
        c->rstate = R_HEAD;
        c->done += 1;
        c->roff = off;
        return off < len;
    }
    if (c->rstate == R_CHUNK_SIZE) {
        u64 line = 0, take = l7fp_resp_load(skb, s, off, 24);
        u64 size = take ? l7fp_chunk_size(s, take, &line) : ~0ULL;
        if (size == ~0ULL) { /* also a size line split across segments: not followed */
            c->untracked = 1;
            return 0;
        }
        off += line;
        if (size == 0) {
            c->rstate = R_CHUNK_END;
        } else {
            c->rstate = R_CHUNK_DATA;
            c->rleft = size + 2;
        }
        c->roff = off;
        return off < len;
    }
    u64 take = l7fp_resp_load(skb, s, off, RESP_WINDOW);
    if (take == 0) {
        c->untracked = 1;
        return 0;
    }
    u64 body = 0, interim = 0, chunked = 0, closes = 0;
    u64 is_head = (c->heads >> (c->done & 63)) & 1;
    u64 head = l7fp_resp_head(s, take, is_head, &body, &interim, &chunked, &closes);
    /* Before the response reaches the client, so before its next request can come; no branch: it
     * would double what the verifier walks after it. */
    c->upstream_closed |= closes;
    if (head == 0) {
        c->untracked = 1;
        return 0;
    }
    off += head;
    if (chunked) {
        c->rstate = R_CHUNK_SIZE;
    } else if (!interim) {
        if (body == 0)
            c->done += 1;
        else {
            c->rstate = R_BODY;
            c->rleft = body;
        }
    }
    c->roff = off;
    return off < len;
}
