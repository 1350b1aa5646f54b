from snapcore.cli import main

main()
