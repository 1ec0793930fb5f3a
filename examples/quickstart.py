"""The README's quickstart: one sandbox, commands, streaming, a background process, files,
and stateful Python (a value kept between cells, an error, an interrupted endless loop)."""

import asyncio

import sandlot


def main() -> None:
    with sandlot.Sandbox.create() as sb:
        print(f"sandbox {sb.id} ({sb.provider})")
        r = sb.commands.run("echo hi; echo oops >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 3)

        sb.commands.run(
            "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
            on_stdout=lambda text: print(text, end="", flush=True),
        )

        h = sb.commands.run("sleep 600", background=True)
        h.kill()
        print("background command ended with signal", h.wait().signal)

        r = sb.commands.run(
            ["python3", "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin="abc"
        )
        print("reversed:", r.stdout.strip())

        sb.files.write("/workspace/a.txt", "hello")
        assert sb.files.read("/workspace/a.txt") == "hello"
        print("files:", [e.name for e in sb.files.list("/workspace")])

        r = sb.commands.run("curl -sS --max-time 2 http://example.org || echo 'no network'")
        print(r.stdout.strip() or r.stderr.strip())

        sb.run_code("import math\nx = 2")
        ex = sb.run_code("x += 1\nmath.sqrt(x)")  # the namespace persists between cells
        print("sqrt(x) =", ex.text)
        print("1/0 raised", sb.run_code("1/0").error.name)  # a result, not an SDK exception
        try:
            sb.run_code("print('looping'); import time\nwhile True: time.sleep(0.1)", timeout=1)
        except sandlot.CodeTimeoutError as exc:
            printed = "".join(exc.execution.logs.stdout).strip()
            print("timed out and interrupted; it had printed:", printed)
        print("x is still", sb.run_code("x").text)

    asyncio.run(async_main())


async def async_main() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        results = await asyncio.gather(*(sb.commands.run(f"echo {i}") for i in range(5)))
        print("async:", [r.stdout.strip() for r in results])


if __name__ == "__main__":
    main()
