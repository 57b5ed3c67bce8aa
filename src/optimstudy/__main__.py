from optimstudy.cli import main

if __name__ == "__main__":  # guarded: the tracking writer process re-imports __main__
    raise SystemExit(main())
