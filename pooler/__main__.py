from pooler.cli import main

main()
