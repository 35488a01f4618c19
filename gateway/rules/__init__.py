"""The telecom team's ``rules/*.yaml``: one module per file, all loaded together by `ruleset`.

==================  ==========================  ===============================================
file                module                      what it gives
==================  ==========================  ===============================================
``directory.yaml``  `gateway.rules.directory`   departments and their extensions (`Directory`)
``lettering.yaml``  `gateway.rules.lettering`   `LetteringRules`; `load_rules` joins both files
``messaging.yaml``  `gateway.rules.messaging`   post-call content, Alimtalk, opt-out words
``routing.yaml``    `gateway.rules.routing`     the citizen SMS routing rules, ``rules test``
``notify.yaml``     `gateway.rules.notify`      queue webhooks and the duty roster
==================  ==========================  ===============================================

`gateway.rules.ruleset` lists them once (`load_all` for start-up and reload, `check` and
``gateway rules check``); its docstring says how to add a file. Every problem reads
``file:line: key.path: message``, built with the shared helper `gateway.infra.yamldoc`.
"""
