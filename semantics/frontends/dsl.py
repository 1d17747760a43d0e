def policy_from_files(paths):
    raise NotImplementedError
