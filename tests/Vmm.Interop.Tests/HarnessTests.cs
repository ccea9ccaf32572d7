using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>The harness reports failures of its peers as test failures, with their output.</summary>
public sealed class HarnessTests : InteropTest
{
    [Test]
    public async Task A_guest_whose_socket_does_not_exist_fails_with_qemus_message()
    {
        var guest = await StartGuestAsync(new GuestOptions { Scenario = "blk-rw", Socket = PathIn("absent.sock") });

        var failure = await Assert.ThrowsAsync<AssertionException>(async () => await guest.WaitDoneAsync(TimeSpan.FromSeconds(60)));

        Assert.That(failure!.Message, Does.Contain("QEMU exited"));
        Assert.That(failure.Message, Does.Contain("absent.sock"), "QEMU's own error is in the message");
        Assert.That(guest.Process.HasExited, Is.True);
    }

    [Test]
    public void The_repository_and_its_launchers_are_found()
    {
        Assert.That(File.Exists(Path.Combine(RepoLayout.Root, "ManagedVmm.sln")), Is.True);
        Assert.That(File.Exists(RepoLayout.VmmLauncher), Is.True, RepoLayout.VmmLauncher);
        Assert.That(File.Exists(RepoLayout.GuestBuilder), Is.True, RepoLayout.GuestBuilder);
    }
}
