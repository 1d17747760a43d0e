/* The in-kernel HTTP/1.1 request parser: one request, from the first byte of a buffer.
 *
 * Included by every L7FP entry program (sk_skb.c, test_run.c) after the generated constants
 * (bpf/codegen.py writes them: WINDOW, BUF_SIZE, MAX_LINES, N_SLOTS, MAX_FIELD, ...). It is
 * deliberately strict: it recognises one canonical shape of request and reports anything else as a
 * parser verdict, which the entry program turns into a PUNT (the request and its connection go to
 * Envoy). Those shapes are listed in docs/dataplane.md with the reason each one punts.
 *
 * Two steps, in two programs joined by a tail call so each has its own verifier budget:
 *
 * 1. l7fp_scan: one pass over the header block, driven by a byte-class table and a transition
 *    table that user space fills (bpf/codegen.py, `scanner_tables`). The loop body is free of
 *    branches except the single exit test: a verifier keeps one pending state per conditional
 *    jump, and a 4 KB scan with more than one branch per byte would exceed its 8192-state limit.
 *    Positions (spaces of the request line, each header line's name, colon and value) are written
 *    to c->pos by table-driven events; a transition without an event writes slot 0.
 * 2. l7fp_frame: the request line's method and version, each header line's name against the
 *    names the policy reads (slots), Content-Length framing, and the field table (c->fo / c->fl)
 *    the generated decision code reads.
 */

/* Scanner states (bpf/codegen.py mirrors these numbers in `S`). */
#define S_METHOD 0
#define S_PATH 1
#define S_QUERY 2
#define S_VERSION 3
#define S_RLCR 4
#define S_LINE 5
#define S_NAME 6
#define S_OWS 7
#define S_VALUE 8
#define S_VWS 9
#define S_HCR 10
#define S_ECR 11
#define S_DONE 12
#define S_ERR 13
#define S_INCOMPLETE 14

/* Position slots: global ones below 8, then four per header line (8 + 4 * line + kind). */
#define P_SP1 1
#define P_QPOS 2
#define P_SP2 3
#define P_RLEND 4
#define P_HEADEND 5
#define P_LINE_BASE 8
#define K_NAME 0
#define K_COLON 1
#define K_VSTART 2
#define K_VEND 3
#define POS_SIZE 512

/* Fixed fields; header slots follow from F_HEADERS (slot order is bpf/codegen.py's). */
#define F_METHOD 0
#define F_TARGET 1
#define F_PATH 2
#define F_QUERY 3
#define F_HEADERS 4
#define N_FIELDS (2 * N_SLOTS) /* N_SLOTS is a power of two >= 4, so this holds them all */

/* Parser verdicts: the first entries of the verdict table (bpf/codegen.py, PARSER_VERDICTS). */
#define V_OK 0xffff
#define V_INCOMPLETE 0
#define V_BEYOND_WINDOW 1
#define V_MALFORMED 2
#define V_VERSION 3
#define V_TOO_MANY_LINES 4
#define V_FRAMING 5
#define V_HOP_BY_HOP 6
#define V_PIPELINED 7
#define V_NOT_ORIGIN_FORM 8
#define V_BEYOND_LOOP 9
#define V_NO_STATE 10
#define V_NO_UPSTREAM 11
#define V_REPLY_PENDING 12
#define V_REPLY_WITH_BODY 13
#define V_ANSWER_ORDER 14
#define V_UPSTREAM_CLOSED 15

#define MODE_FAST 0
#define MODE_PUNTED 1

struct conn {
    u32 mode;
    u32 punt;          /* verdict that punted the connection */
    u32 src_ip;        /* host byte order, written by the agent */
    u32 dst_ip;
    u32 replies;       /* local replies decided on this connection (the agent acknowledges each) */
    u32 reply;         /* verdict of the last one */
    u32 scanned;       /* bytes the scan loaded */
    u32 stop;          /* where the scan stopped */
    u32 state;         /* scanner state at the end of the scan */
    u32 lines;         /* header lines seen */
    u32 end;           /* end of the request (header block + Content-Length body) */
    /* Answer order (sk_skb.c, bpf/c/http1_response.h): each field has one writer, the request
     * path or the response path of the upstream requests were forwarded to (bytes from any other
     * upstream only set `untracked`, and `to_client` is added to atomically). */
    u32 sent;          /* requests forwarded in kernel (request path) */
    u32 fwd_slot;      /* the upstream slot the last of them went to (request path) */
    u64 heads;         /* bit n % 64: forwarded request n was a HEAD (request path) */
    u32 done;          /* responses to them the program has seen end (response path) */
    u32 rstate;        /* R_HEAD or R_BODY (response path) */
    u64 rleft;         /* body bytes the current response still has (response path) */
    u64 to_client;     /* response bytes redirected to the client (response path) */
    u32 roff;          /* where the next framing step starts in the current skb (response path) */
    u32 untracked;     /* set for good when the framing is not followed (any path) */
    u32 upstream_closed; /* a response announced its upstream's close: later forwards punt (response path) */
    u32 pad2;
    u64 fwd_ns[64];    /* n % 64: when forwarded request n left, bpf_ktime_get_ns (request path; the
                        * agent times the oldest unanswered one out as Envoy's route timeout would) */
    u32 fo[N_FIELDS];  /* field offsets in buf */
    u32 fl[N_FIELDS];  /* field lengths */
    u32 count[N_SLOTS];
    u32 pos[POS_SIZE];
    u8 buf[BUF_SIZE];
};

struct tables {
    u32 trans[256];    /* (state << 4 | class) -> next | events | stop, see codegen.scanner_tables */
    u8 cls[256];
    u8 sets[N_SETS * 32]; /* flat: bcc's ctypes mirror collapses 2-D arrays */
    u32 verdict[N_VERDICTS]; /* kind << 16 | cluster slot */
    u16 dfa[N_DFA_ROWS * 128]; /* (row << 7 | byte) -> next row, see bpf/regex_dfa.py; row 0 is dead */
    u8 accepting[N_DFA_ROWS];
};

#define BYTE(c, x) ((u64)(c)->buf[(x) & (BUF_SIZE - 1)])

/* One event: slot code e (0: none), written with i + o. Line slots add 4 * line. */
static __always_inline void l7fp_event(struct conn *c, u64 e, u64 o, u64 line, u64 i)
{
    u64 index = e + (e >> 3) * (line << 2);
    c->pos[index & (POS_SIZE - 1)] = i + o;
}

/* Copies the first min(len, WINDOW) bytes of the skb into c->buf and puts a NUL after them. */
static __always_inline int l7fp_load(struct __sk_buff *skb, struct conn *c)
{
    u64 take = skb->len;
    if (take > WINDOW)
        take = WINDOW;
    if (take == 0)
        return -1;
    c->scanned = take;
    c->buf[take & (BUF_SIZE - 1)] = 0;
    return bpf_skb_load_bytes(skb, 0, c->buf, take);
}

/* Scans the loaded bytes and returns the scanner's final state. The end of the data is the NUL
 * l7fp_load wrote: a NUL is a control byte, so the scan stops on it in S_ERR, and a stop exactly at
 * the end of the data is reported as S_INCOMPLETE. The length never enters the loop, so the
 * verifier sees one exit test per byte and nothing to track about the length. */
static __always_inline u32 l7fp_scan(struct conn *c, const struct tables *t)
{
    u64 s = S_METHOD, line = 0, i;
    c->pos[P_QPOS] = 0;
    c->pos[P_HEADEND] = 0;
    for (i = 0; i < WINDOW + 1; i++) {
        u64 k = t->cls[BYTE(c, i) & 0xff];
        u64 tr = t->trans[((s << 4) | k) & 0xff];
        l7fp_event(c, (tr >> 4) & 0xf, (tr >> 8) & 1, line, i);
        l7fp_event(c, (tr >> 9) & 0xf, (tr >> 13) & 1, line, i);
        line += (tr >> 14) & 1;
        s = tr & 0xf;
        if (tr >> 15)
            break;
    }
    c->state = s;
    c->lines = line;
    c->stop = i;
    if (s == S_ERR && c->stop == c->scanned)
        c->state = S_INCOMPLETE;
    return c->state;
}

/* Generated (bpf/codegen.py): the header slot of a name, -1 if the policy does not read it. */
static __always_inline int l7fp_slot_of(const struct conn *c, u64 off, u64 len);

/* The request line, header slots and framing. Fills c->fo, c->fl, c->count and c->end. */
static __always_inline u32 l7fp_frame(struct conn *c, const struct tables *t, u64 len)
{
    if (c->state == S_INCOMPLETE)
        return len > WINDOW ? V_BEYOND_WINDOW : V_INCOMPLETE;
    if (c->state != S_DONE)
        return V_MALFORMED;
    u64 sp1 = c->pos[P_SP1], sp2 = c->pos[P_SP2], rlend = c->pos[P_RLEND], q = c->pos[P_QPOS];
    u64 lines = c->lines;
    if (lines > MAX_LINES)
        return V_TOO_MANY_LINES;
    /* "HTTP/1.1" exactly, then CR */
    if (rlend != sp2 + 9)
        return V_VERSION;
    u64 d = (BYTE(c, sp2 + 1) ^ 'H') | (BYTE(c, sp2 + 2) ^ 'T') | (BYTE(c, sp2 + 3) ^ 'T') |
            (BYTE(c, sp2 + 4) ^ 'P') | (BYTE(c, sp2 + 5) ^ '/') | (BYTE(c, sp2 + 6) ^ '1') |
            (BYTE(c, sp2 + 7) ^ '.') | (BYTE(c, sp2 + 8) ^ '1');
    if (d)
        return V_VERSION;
    if (BYTE(c, sp1 + 1) != '/')
        return V_NOT_ORIGIN_FORM;
    c->fo[F_METHOD] = 0;
    c->fl[F_METHOD] = sp1;
    c->fo[F_TARGET] = sp1 + 1;
    c->fl[F_TARGET] = sp2 - sp1 - 1;
    c->fo[F_PATH] = sp1 + 1;
    c->fl[F_PATH] = (q ? q : sp2) - sp1 - 1;
    c->fo[F_QUERY] = q ? q + 1 : sp2;
    c->fl[F_QUERY] = q ? sp2 - q - 1 : 0;

    for (int s = 0; s < N_SLOTS; s++) {
        c->count[s] = 0;
        c->fo[F_HEADERS + s] = 0;
        c->fl[F_HEADERS + s] = 0;
    }
    for (u64 l = 0; l < MAX_LINES; l++) {
        if (l >= lines)
            break;
        u64 base = P_LINE_BASE + (l << 2);
        u64 name = c->pos[(base + K_NAME) & (POS_SIZE - 1)];
        u64 colon = c->pos[(base + K_COLON) & (POS_SIZE - 1)];
        u64 vstart = c->pos[(base + K_VSTART) & (POS_SIZE - 1)];
        u64 vend = c->pos[(base + K_VEND) & (POS_SIZE - 1)];
        int slot = l7fp_slot_of(c, name, colon - name);
        if (slot == SLOT_HOP_BY_HOP)
            return V_HOP_BY_HOP;
        if (slot < 0)
            continue;
        u32 n = c->count[slot & (N_SLOTS - 1)] + 1;
        c->count[slot & (N_SLOTS - 1)] = n;
        if (n == 1) {
            c->fo[(F_HEADERS + slot) & (N_FIELDS - 1)] = vstart;
            c->fl[(F_HEADERS + slot) & (N_FIELDS - 1)] = vend - vstart;
        }
    }
    /* Content-Length: at most one, digits only, the whole body inside this buffer. */
    u64 body = 0;
    u32 lengths = c->count[SLOT_CONTENT_LENGTH];
    if (c->count[SLOT_TRANSFER_ENCODING] || lengths > 1)
        return V_FRAMING;
    if (lengths == 1) {
        u64 off = c->fo[F_HEADERS + SLOT_CONTENT_LENGTH], n = c->fl[F_HEADERS + SLOT_CONTENT_LENGTH];
        if (n == 0 || n > 6)
            return V_FRAMING;
        for (int j = 0; j < 6; j++) {
            if (j >= n)
                break;
            u64 digit = BYTE(c, off + j) - '0';
            if (digit > 9)
                return V_FRAMING;
            body = body * 10 + digit;
        }
    }
    u64 end = c->pos[P_HEADEND] + body;
    if (end > len)
        return V_INCOMPLETE;
    if (end < len)
        return V_PIPELINED;
    c->end = end;
    return V_OK;
}

/* The decision code's tests are branch-free on the data: a test computes 0 or 1 (plus 2 when a
 * field is longer than the loop bound, so the decision punts) with arithmetic, and only its result
 * is branched on. A compare on a length would make the verifier remember a different range for it
 * on each path, and no two paths through the DAG would ever prune against each other. */
/* An empty asm hides a value from clang, which would otherwise turn the arithmetic below back into
 * compares and branches (BPF has no setcc). */
static __always_inline u64 l7fp_hide(u64 x)
{
    asm volatile("" : "+r"(x));
    return x;
}
/* 1 iff d == 0 */
#define L7FP_ZERO(d) ((l7fp_hide(((u64)(d)) | (0 - (u64)(d))) >> 63) ^ 1)
/* 1 iff a < b, for a, b < 2^63 */
#define L7FP_LT(a, b) (l7fp_hide(((u64)(a)) - ((u64)(b))) >> 63)
/* 1 iff lo <= b <= hi (a byte in a class such as '0'..'9') */
#define L7FP_IN(b, lo, hi) (L7FP_LT(b, (hi) + 1) & (1 ^ L7FP_LT(b, lo)))

/* Is every byte of [off, off+len) in set `id`? */
static __always_inline u64 l7fp_chars_in(const struct conn *c, const struct tables *t, int id, u64 off, u64 len)
{
    u64 bad = 0;
    for (u64 j = 0; j < MAX_FIELD; j++) {
        u64 ch = BYTE(c, off + j);
        u64 out = ((~(u64)t->sets[((id & (N_SETS - 1)) << 5) | ((ch >> 3) & 31)]) >> (ch & 7)) & 1;
        bad |= out & L7FP_LT(j, len);
    }
    return L7FP_ZERO(bad) | (L7FP_LT(MAX_FIELD, len) << 1);
}

/* Does the DFA that starts at row `start` accept all of [off, off+len)? Bit 1 set: the field is
 * longer than the loop or holds a byte >= 0x80 (RE2 would read UTF-8 there), and the caller punts.
 * Branch-free like l7fp_chars_in: rows past the field's end are not taken. */
static __always_inline u64 l7fp_regex(const struct conn *c, const struct tables *t, u64 start, u64 off, u64 len)
{
    u64 row = start, seen = 0;
    for (u64 j = 0; j < MAX_FIELD; j++) {
        u64 ch = BYTE(c, off + j);
        /* all ones inside the field, else 0; hidden, or clang branches on it */
        u64 inside = l7fp_hide(0 - L7FP_LT(j, len));
        u64 next = t->dfa[((row << 7) | (ch & 0x7f)) & (N_DFA_ROWS * 128 - 1)];
        row ^= (row ^ next) & inside;
        seen |= ch & inside;
    }
    return (t->accepting[row & (N_DFA_ROWS - 1)] & 1) | (((seen >> 7) | L7FP_LT(MAX_FIELD, len)) << 1);
}
