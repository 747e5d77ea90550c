from scirepo_singleuser import main

main()
