/* Entry for the test-run harness: the generated decision code as SOCKET_FILTER programs, run by
 * BPF_PROG_TEST_RUN on raw request bytes (bpf/testrun.py). The last program returns the verdict code
 * itself, so tests and fuzzing compare the kernel's own verdict with the DAG's. One connection
 * state, key 0, whose addresses the harness writes before a run.
 */
BPF_F_TABLE("hash", u64, struct conn, conns, 4, BPF_F_NO_PREALLOC);
BPF_ARRAY(tables, struct tables, 1);
BPF_PROG_ARRAY(progs, 2);

static __always_inline struct conn *l7fp_conn(void)
{
    u64 key = 0;
    return conns.lookup(&key);
}

static __always_inline struct tables *l7fp_tables(void)
{
    u32 zero = 0;
    return tables.lookup(&zero);
}

int l7fp_entry(struct __sk_buff *skb)
{
    struct conn *c = l7fp_conn();
    struct tables *t = l7fp_tables();
    if (!c || !t)
        return V_NO_STATE;
    if (l7fp_load(skb, c) < 0)
        return V_INCOMPLETE;
    l7fp_scan(c, t);
    progs.call(skb, 0);
    return V_NO_STATE;
}

int l7fp_frame_request(struct __sk_buff *skb)
{
    struct conn *c = l7fp_conn();
    struct tables *t = l7fp_tables();
    if (!c || !t)
        return V_NO_STATE;
    u32 v = l7fp_frame(c, t, skb->len);
    if (v != V_OK)
        return v;
    progs.call(skb, 1);
    return V_NO_STATE;
}

int l7fp_decide(struct __sk_buff *skb)
{
    struct conn *c = l7fp_conn();
    struct tables *t = l7fp_tables();
    if (!c || !t)
        return V_NO_STATE;
    return l7fp_dag(c, t);
}
