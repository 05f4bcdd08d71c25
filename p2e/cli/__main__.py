from p2e.cli import main

main()
