# The twin of contrib/app/app.py and config.ru for starman (PSGI): same routes, same answers.
# Lives in bench/ because only the benchmark's Server::Starter comparison uses it.
use strict;
use warnings;
use Cwd qw(getcwd);
use File::Basename qw(basename);

die "this release is broken on purpose (BROKEN file present)\n" if -e "BROKEN";
my $release = basename(getcwd());
if (open my $fh, '<', 'RELEASE') { chomp($release = <$fh>); close $fh; }

sub {
    my $env = shift;
    my $path = $env->{PATH_INFO} || '/';
    if ($path eq '/slow') {
        my ($s) = ($env->{QUERY_STRING} // '') =~ /(?:^|&)s=([0-9.]+)/;
        select(undef, undef, undef, $s // 1);
    }
    my $body = $path eq '/health' ? "ok\n"
             : "release=$release pid=$$ master=" . getppid() . "\n";
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
