"""placeholder replaced below"""
def policy_from_documents(docs, workload=None):
    raise NotImplementedError
def policy_with_default_routes(filters, sources):
    raise NotImplementedError
