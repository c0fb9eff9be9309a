from mailblast.cli import main

main()
