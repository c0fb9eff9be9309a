from mailblast.cli import main

if __name__ == "__main__":  # guarded: the compose worker process imports this module too
    main()
